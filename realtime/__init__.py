"""Real-time serving: the /ws protocol, latest-wins multi-client scheduling, frame encoding, the ASGI app and the
load test. It hands batches of GenerationRequests to a `pipelines` engine and never touches torch itself."""
