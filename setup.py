"""Packaging for earl: the library (`earl`), the VQ image tokenizer (`tokenizer`) and the `earl` command."""
from setuptools import find_packages, setup

setup(
    name="earl",
    version="0.1.0",
    description="Autoregressive image editing with SFT, chain-of-thought and RL (GRPO) on verifier rewards",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["earl", "earl.*", "tokenizer", "tokenizer.*"]),
    include_package_data=True,
    install_requires=[
        "torch>=2.6",
        "transformers>=5,<6",
        "accelerate>=1.0",
        "einops>=0.8",
        "vector-quantize-pytorch>=1.20",
        "datasets>=3.0",
        "huggingface_hub>=1.0",  # Hub ids, model cards and uploads (earl.hub)
        "safetensors>=0.4",
        "pillow>=10.0",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "numpy>=1.26",
        "tensorboard>=2.15",
        "httpx>=0.27",
        "fastapi>=0.110",  # `earl serve judge` (earl.serve.judge), on uvicorn as vLLM and SGLang are
        "uvicorn>=0.30",
        "matplotlib>=3.7",  # study curves and reward plots
        "trl>=0.20",  # the decomposition agent's SFT and GRPO (earl.train.decomposer)
        "peft>=0.13",  # LoRA adapters, a recipe's `lora:` section (earl.train.lora)
    ],
    extras_require={
        "flash": ["flash-attn>=2.6"],
        "deepspeed": ["deepspeed>=0.15"],
        "kernels": ["triton>=3.2"],  # earl.kernels on a GPU
        "app": ["gradio>=6,<7"],  # `earl app`, the web UI (earl.app)
        # triton>=3.9 in dev: its interpreter (TRITON_INTERPRET=1, the kernel tests on a CPU) works with
        # numpy 2.4; 3.6's fails on any loop (triton#9171)
        "dev": ["pytest>=8", "ruff>=0.6", "hypothesis>=6.100", "scikit-image>=0.22", "deepspeed>=0.15",
                "gradio>=6,<7", "selenium>=4.20",  # the app and its browser test (.ci/run installs Chromium)
                "triton>=3.9", "openai>=1.0"],  # openai: the judge server's load test talks to it
    },
    entry_points={"console_scripts": ["earl=earl.cli:main"]},
)
