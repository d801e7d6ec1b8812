# Two commands on a fresh machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test test-fast bench soak lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

.env: | $(BIN)/python
	@$(BIN)/python -c "import secrets, pathlib; \
	text = pathlib.Path('.env.example').read_text(); \
	pathlib.Path('.env').write_text(text.replace('SECRET_KEY=change-me', 'SECRET_KEY=' + secrets.token_urlsafe(48)))"
	@echo "wrote .env (from .env.example, with a fresh SECRET_KEY)"

## Start everything on localhost:8080: daphne, a django-q2 cluster, the demo agent.
## PORT (environment, `make run PORT=...`, or .env) moves it; a busy port stops with a message,
## before the migrations (`serve --migrate` binds the port first).
run: $(VENV)/.installed .env
	$(BIN)/python manage.py serve --migrate

## Two pytest-xdist workers: much of the suite waits on the processes it starts.
## `make test XDIST=` runs it in one process.
XDIST ?= -n 2 --dist worksteal

## The whole suite; on PostgreSQL + Redis when DATABASE_URL and REDIS_URL are set.
test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

## The inner loop: everything but the tests that start processes or a browser.
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(XDIST) -m "not processes and not browser" $(PYTEST_ARGS)

## Throughput and latency figures, printed as tables (README, "Numbers").
bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

## The soak (docs/reliability.md): 5,000 executions while the receiver, worker and daphne fail.
## `make soak SOAK_ARGS=--ci` is the short form the test suite runs.
soak: $(VENV)/.installed-dev
	$(BIN)/python -m soak $(SOAK_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) staticfiles db.sqlite3 db.sqlite3-wal db.sqlite3-shm
