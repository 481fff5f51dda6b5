"""Benchmark building blocks: payloads, raw aiokafka throughput, a naive faust agent."""
