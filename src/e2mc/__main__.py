from e2mc.cli import run

run()
