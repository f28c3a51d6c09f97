"""Capture: log what a running agent does, without slowing it down.

``SleepCallbackHandler`` works with any LangGraph graph (pass it in
``config["callbacks"]``); ``SleepMiddleware`` plugs into LangChain v1
``create_agent``. Both feed an ``ExperienceRecorder``, whose background writer
batches writes and survives database outages.
"""
