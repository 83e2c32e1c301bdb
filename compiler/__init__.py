"""edgefleet.compiler: turn ONNX / TFLite / SageMaker outputs into signed model packages with TVM."""
