"""recstream: a streaming, near-real-time, event-driven recommender.

The layers, bottom to top; a module imports only from its own layer and those below
(tests/test_layers.py checks it on the import graph):

0. ``recstream.contracts``  event schema, Redis key layout, settings, experiment configuration, header values
   ``recstream.runtime``    the process itself: garbage collector tuning for the worker and the reader
1. ``recstream.models``     pure math and data structures (the folder models/)
2. ``recstream.eventlog``   Kafka clients: the producer and log reads
   ``recstream.store``      Redis state: the atomic batch script and its callers
   ``recstream.client``     the Python client of the reader's HTTP API (imports only the contracts)
3. ``recstream.streams``    the stream worker (the folder streams/)
   ``recstream.serving``    the reader (the folder serving/); streams and serving never import each other
4. ``recstream.jobs``       batch jobs: train, rebuild, experiment report, file sources
5. ``recstream.sim``        the synthetic world and the closed-loop simulator
6. ``recstream.shell``      the CLI, the demo and local infrastructure
"""
