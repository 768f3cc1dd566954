"""kestream: Kestra-style workflows on Kafka, as a Kafka Streams-style topology in Python."""
