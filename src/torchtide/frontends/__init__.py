"""Front-ends: thin adapters from a wire protocol to InferenceServer. No model logic here."""
