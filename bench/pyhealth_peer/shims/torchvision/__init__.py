"""Stand-in for torchvision in the PyHealth peer's venv only.

PyHealth 2.1.0 imports `torchvision.transforms` when `pyhealth.processors` is
imported (image processors), although the MIMIC-IV EHR tasks never use it; PyPI's
torchvision wheel is a CUDA build that fails to load against the CPU torch here
("operator torchvision::nms does not exist"). Any name can be imported from this
package; using one raises, so an image path could never run silently on it.
"""

from torchvision._stub import stub_getattr as __getattr__  # noqa: F401
from torchvision import models, transforms  # noqa: F401

__version__ = "0.0.0+pyhealth-peer-stub"
