"""The fleet service: model registry, devices, over-the-air rollouts, MQTT bridge, REST API."""
