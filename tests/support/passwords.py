"""A password hasher for tests: PBKDF2 at few iterations.

Every user a test makes costs one hash, and the default's iterations make that
most of a second on a small machine. The iteration count is part of the
encoded hash, so a real daphne, on its default hashers, still verifies these.
"""

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class FewIterationsPBKDF2PasswordHasher(PBKDF2PasswordHasher):
    iterations = 1000
