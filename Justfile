# Recipes wrap the same commands the README gives.

venv := ".venv"

# Create the virtualenv and install the project with its dev tools.
setup:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -e '.[dev]'

# Start the server on the built-in simulated device (http://127.0.0.1:8000).
serve *ARGS: setup
    {{venv}}/bin/bridge-actors serve {{ARGS}}

# Run the whole test suite.
test *ARGS: setup
    {{venv}}/bin/python -m pytest {{ARGS}}

# Lint and check formatting.
lint: setup
    {{venv}}/bin/ruff check . && {{venv}}/bin/ruff format --check .

# The library alone: the simulated device streamed to in-process viewers.
demo *ARGS: setup
    {{venv}}/bin/bridge-actors demo {{ARGS}}

# The standard benchmark set.
bench *ARGS: setup
    {{venv}}/bin/python -m benchmarks standard {{ARGS}}
