"""The op catalog. Importing this package registers every op family's schema."""

from . import elementwise, nn, reduce, shape  # noqa: F401
