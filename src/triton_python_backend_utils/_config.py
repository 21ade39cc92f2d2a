"""Model configuration helpers, including the auto-complete ``ModelConfig``."""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = [
    "ModelConfig",
    "get_input_config_by_name",
    "get_output_config_by_name",
    "using_decoupled_model_transaction_policy",
]


def _find_by_name(entries: Any, name: str) -> dict[str, Any] | None:
    for entry in entries or ():
        if entry.get("name") == name:
            result: dict[str, Any] = entry
            return result
    return None


def _dims(dims: Any) -> list[int]:
    # protobuf's json_format writes int64 dims as strings; compare as integers.
    return [int(d) for d in dims]


def get_input_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``input`` entry of the config dict named ``name``, or None."""
    return _find_by_name(model_config.get("input"), name)


def get_output_config_by_name(model_config: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The ``output`` entry of the config dict named ``name``, or None."""
    return _find_by_name(model_config.get("output"), name)


def using_decoupled_model_transaction_policy(model_config: dict[str, Any]) -> bool:
    """Whether the config dict sets ``model_transaction_policy.decoupled``."""
    policy = model_config.get("model_transaction_policy")
    if not policy:
        return False
    return bool(policy.get("decoupled", False))


class ModelConfig:
    """The config given to ``TritonPythonModel.auto_complete_config``.

    Built from the config as a dict (or its JSON string, as Triton passes it);
    the dict is copied.  Only max_batch_size, scheduling, inputs, outputs and the
    transaction policy can be changed; ``as_dict()`` gives the (live) result.
    """

    __slots__ = ("_model_config",)

    def __init__(self, model_config: dict[str, Any] | str) -> None:
        if isinstance(model_config, str):
            config = json.loads(model_config)
        else:
            config = copy.deepcopy(model_config)
        if not isinstance(config, dict):
            raise TypeError("model_config must be a dict or a JSON object string")
        config.setdefault("name", "")
        config.setdefault("max_batch_size", 0)
        config.setdefault("input", [])
        config.setdefault("output", [])
        self._model_config: dict[str, Any] = config

    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def as_dict(self) -> dict[str, Any]:
        """The model configuration as a dict."""
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        """Raises ValueError if the config already sets a larger max_batch_size."""
        current = int(self._model_config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in "
                f"auto-complete-config function for model '{self._name()}' specified "
                f"max_batch_size {max_batch_size}"
            )
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        """Use dynamic batching unless another scheduler is configured (ValueError)."""
        found = None
        if "sequence_batching" in self._model_config:
            found = "sequence_batching"
        elif "ensemble_scheduling" in self._model_config:
            found = "ensemble_scheduling"
        if found is not None:
            raise ValueError(
                f"Configuration specified scheduling_choice as '{found}', but "
                f"auto-complete-config function for model '{self._name()}' tries to set "
                "scheduling_choice as 'dynamic_batching'"
            )
        self._model_config.setdefault("dynamic_batching", {})

    def _check_tensor(self, tensor: dict[str, Any], kind: str, valid: tuple[str, ...]) -> str:
        name = tensor.get("name")
        model = self._name()
        for prop in tensor:
            if prop not in valid:
                allowed = ", ".join(f"'{p}'" for p in valid[:-1]) + f" and '{valid[-1]}'"
                raise ValueError(
                    f"{kind} '{name}' in auto-complete-config function for model '{model}' "
                    f"contains property other than {allowed}."
                )
        if name is None:
            raise ValueError(
                f"{kind} in auto-complete-config function for model '{model}' is missing "
                "'name' property."
            )
        for required in ("data_type", "dims"):
            if required not in tensor:
                raise ValueError(
                    f"{kind} '{name}' in auto-complete-config function for model '{model}' "
                    f"is missing '{required}' property."
                )
        return str(name)

    def _merge(self, tensor: dict[str, Any], kind: str, with_optional: bool) -> None:
        name = tensor["name"]
        model = self._name()
        entries: list[dict[str, Any]] = self._model_config.setdefault(kind, [])
        for current in entries:
            if current.get("name") != name:
                continue
            current_type = current.get("data_type", "TYPE_INVALID")
            current_dims = current.get("dims") or []
            if current_type != "TYPE_INVALID" and current_type != tensor["data_type"]:
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype "
                    f"{current_type} for {kind} '{name}', model provides {tensor['data_type']}"
                )
            if current_dims and _dims(current_dims) != _dims(tensor["dims"]):
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects dims "
                    f"{tensor['dims']} but the model configuration specifies dims "
                    f"{current_dims}"
                )
            if (
                with_optional
                and "optional" in current
                and "optional" in tensor
                and current["optional"] != tensor["optional"]
            ):
                raise ValueError(
                    f"model '{model}', tensor '{name}': the model expects optional "
                    f"{tensor['optional']} but the model configuration specifies optional "
                    f"{current['optional']}"
                )
            current["data_type"] = tensor["data_type"]
            current["dims"] = tensor["dims"]
            if with_optional and "optional" in tensor:
                current["optional"] = tensor["optional"]
            return
        entries.append(tensor)

    def add_input(self, input: dict[str, Any]) -> None:
        """Add (or complete) an input; ValueError on invalid or conflicting entries."""
        self._check_tensor(input, "input", ("name", "data_type", "dims", "optional"))
        self._merge(input, "input", with_optional=True)

    def add_output(self, output: dict[str, Any]) -> None:
        """Add (or complete) an output; ValueError on invalid or conflicting entries."""
        self._check_tensor(output, "output", ("name", "data_type", "dims"))
        self._merge(output, "output", with_optional=False)

    def set_model_transaction_policy(self, transaction_policy_dict: dict[str, Any]) -> None:
        """Set ``model_transaction_policy``; only 'decoupled' may be given."""
        model = self._name()
        for prop in transaction_policy_dict:
            if prop != "decoupled":
                raise ValueError(
                    "model transaction property in auto-complete-config function for model "
                    f"'{model}' contains property other than 'decoupled'."
                )
        policy: dict[str, Any] = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            if (
                "decoupled" in policy
                and policy["decoupled"] != transaction_policy_dict["decoupled"]
            ):
                raise ValueError(
                    "trying to change decoupled property in auto-complete-config for model "
                    f"'{model}', which is already set to '{policy['decoupled']}'."
                )
            policy["decoupled"] = transaction_policy_dict["decoupled"]
