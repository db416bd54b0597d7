"""Probes inside other training frameworks: ``landscape.integrations.lightning`` (PyTorch
Lightning, extra ``lightning``) and ``landscape.integrations.hf`` (the Hugging Face ``Trainer``,
extra ``hf``). Import the submodule you need; each names its extra in one line when missing."""
