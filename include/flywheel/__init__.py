"""flywheel: turn an LLM product's production traffic into better models, cycle after cycle.

The core library: plain Python, no Airflow import. One module per stage of the cycle.
"""

__version__ = "0.1.0"
