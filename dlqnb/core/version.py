"""dlqnb's version, kept where every stage can read it without importing the package's top."""

__version__ = "0.1.0"
