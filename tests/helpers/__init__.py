"""What more than one test folder needs: an Airflow of its own (`flywheel_env`, `airflow_server`),
production-log rows (`log_rows`), the simulator's oracle (`oracle`) and the config its product
needs (`simulated_product`), the contract's backends
(`backends`) and a WebDriver client (`chromedriver`). Imported as ``tests.helpers.<module>``;
pytest's ``pythonpath`` setting puts the repository root on ``sys.path``."""
