"""edgefleet.agent: runs on each camera. Imports stay light: TVM runtime, numpy, pillow, paho-mqtt."""
