"""W1 add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.

A Triton Python-backend model in the shape of python_backend's add_sub example: the class is
named TritonPythonModel, it talks to the server only through triton_python_backend_utils, and
execute() returns exactly one InferenceResponse per request, in request order.
"""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        """Called once at load time.

        ``args`` maps strings to strings: model_config (JSON), model_instance_kind,
        model_instance_device_id, model_repository, model_version, model_name.
        """
        self.model_config = model_config = json.loads(args["model_config"])

        output0_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT0")
        output1_config = pb_utils.get_output_config_by_name(model_config, "OUTPUT1")

        # Triton type names (e.g. "TYPE_INT32") -> numpy dtypes.
        self.output0_dtype = pb_utils.triton_string_to_numpy(output0_config["data_type"])
        self.output1_dtype = pb_utils.triton_string_to_numpy(output1_config["data_type"])

    def execute(self, requests):
        """One pb_utils.InferenceResponse per pb_utils.InferenceRequest, same order."""
        output0_dtype = self.output0_dtype
        output1_dtype = self.output1_dtype

        responses = []
        for request in requests:
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()

            out_0 = in_0 + in_1
            out_1 = in_0 - in_1

            out_tensor_0 = pb_utils.Tensor("OUTPUT0", out_0.astype(output0_dtype))
            out_tensor_1 = pb_utils.Tensor("OUTPUT1", out_1.astype(output1_dtype))
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[out_tensor_0, out_tensor_1])
            )
        return responses

    def finalize(self):
        """Called once at unload time."""
        print("Cleaning up...")
