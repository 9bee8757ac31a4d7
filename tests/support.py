"""Constants shared by the unit tests (a module of its own: tests/cli has a conftest too)."""

API = "https://api.test/api/v1"
KEY = "nb_unit_test_secret_key_123"
