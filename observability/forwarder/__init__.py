"""The collector forwarder: every platform event, in id order, in signed batches.

The event log is the queue. `ForwarderState.cursor` is the id of the last event
that is done with (acknowledged by the collector, dead-lettered, or filtered out);
it moves only after the collector answered 2xx or the batch went to the dead
letter queue, in the same transaction as those dead letters. A worker killed
mid-send therefore re-sends the batches in flight, and those acknowledged in the
last SAVE_SECONDS, on the next run: delivery is at least once. `batch_id` is
derived from the events a batch carries, so a batch re-sent with the same events
keeps its `webhook-id` and collectors can de-duplicate on it.

One forwarder runs at a time (the "forwarder" lease), so batches are started in
id order. Up to OBSERVABILITY_CONCURRENCY consecutive batches are in flight at
once on keep-alive connections; the cursor only ever covers the contiguous prefix
of finished batches, so a collector may see two neighbouring batches arrive out
of order (each event carries its `event_id`), never a gap.

Runs are started by `kick()`: after each committed event transaction (low
latency) and from a sweeper tick (catch-up after downtime or a lost wake-up).

Modules: `configuration` (validation, the collector, the status document),
`batches` (the envelope, batches, sending with retries), `runner` (the run loop,
its cursor and its triggers), `dead_letters` (what the collector would not take,
the redrive).
"""
