"""produce-sorter device runtime: capture -> preprocess -> classify -> actuate.

Never imports TensorFlow: the Raspberry Pi runs LiteRT only.
"""

__version__ = "0.1.0"
