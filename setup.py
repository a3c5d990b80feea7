"""Packaging for mergevq (the method) and taming (the VQGAN-lineage data, losses, discriminator)."""

import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = "mergevq-torchvision-compat.pth"


# mergevq.paths.SOURCE_CHECKOUT_FILE: where the installed package finds the checkout it was built from.
SOURCE_CHECKOUT_FILE = "_source_checkout.txt"


class BuildPyWithExtras(build_py):
    """Also place the .pth hook at the root of the wheel (so it lands in site-packages), ship
    ``configs/`` inside the package (``mergevq/configs``) so an installed CLI finds its YAMLs, and
    record this checkout's absolute path (``mergevq/_source_checkout.txt``): while that folder exists,
    the installed CLI reads the checkout's ``configs/``, i.e. the files the user edits; the packaged
    copy is the fallback once it is gone (e.g. a wheel built from a temporary sdist folder)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH))
        self.copy_tree(os.path.join(HERE, "configs"), os.path.join(self.build_lib, "mergevq", "configs"))
        record = os.path.join(self.build_lib, "mergevq", SOURCE_CHECKOUT_FILE)
        with open(record, "w", encoding="utf-8") as handle:
            handle.write(HERE + "\n")

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, PTH),
            os.path.join(self.build_lib, "mergevq", SOURCE_CHECKOUT_FILE),
        ]


def read_version():
    with open(os.path.join(HERE, "mergevq", "version.py")) as f:
        scope = {}
        exec(f.read(), scope)
        return scope["__version__"]


setup(
    name="mergevq",
    version=read_version(),
    description="MergeVQ tokenizer and MergeAR generator: token merging + lookup-free quantization",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["mergevq", "mergevq.*", "taming", "taming.*"]),
    py_modules=["_torchvision_compat"],
    include_package_data=True,
    package_data={"mergevq": ["py.typed"]},
    # Ranges, not pins: requirements.txt holds the tested pins. torch>=2.1 keeps an installed build.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "lightning>=2.2",
        "omegaconf>=2.3",
        "timm>=0.9.11",
        "transformers>=4.40",
        "einops>=0.7",
        "torch-fidelity>=0.3",
        "numpy>=1.24",
        "pillow>=10.0",
        "lpips>=0.1.4",
        "torchmetrics>=1.0",
        "scipy>=1.10",
        "safetensors>=0.4",
        "tensorboard>=2.14",
        "scikit-image>=0.22",
        "scikit-learn>=1.3",
        "tqdm>=4.60",
        "matplotlib>=3.7",  # the experiment plots (mergevq experiment)
    ],
    extras_require={"test": ["pytest>=7.4", "pytest-timeout>=2.2"], "npu": [], "wandb": ["wandb>=0.16"]},
    entry_points={"console_scripts": ["mergevq=mergevq.cli:main"]},
    cmdclass={"build_py": BuildPyWithExtras},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
