import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)
    assert len(commands) == 2
    assert "swiftfusion generate" in commands[0]
    assert commands[1] in ROOT.joinpath(".ci/run").read_text().splitlines()
