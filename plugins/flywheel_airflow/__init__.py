"""Airflow extensions for the flywheel: thin operators and hooks over `include/flywheel`.

Nothing here holds business logic; each operator resolves the run's cycle and configuration,
opens the warehouse through the hook, and calls one stage of `flywheel.cycle`.
"""
