"""A command for tests/test_launch.py: runs ``launch()`` on 2 ranks and handles its errors as
``swiftfusion``'s CLI does, so that a test can signal it as a terminal or a supervisor would.

    python launch_script.py slow|fail FOLDER

Both ranks generate digits with Ulysses 2 (collectives in every step); each writes
``FOLDER/ready.<rank>`` (its pid) at step 1. ``slow`` then runs for hours; in ``fail`` rank 1
raises at step 2.
"""

import os
import signal
import sys

from swiftfusion import DigitsPipeline, ParallelConfig, parallelize, runtime
from swiftfusion.launch import LaunchError, LaunchInterrupted, launch


def rank_main(scenario: str, folder: str) -> None:
    pipe = parallelize(DigitsPipeline.from_pretrained(), ParallelConfig(ulysses_degree=2))

    def on_step(step: int) -> None:
        if step == 1:
            with open(os.path.join(folder, f"ready.{runtime.rank()}"), "w") as f:
                f.write(str(os.getpid()))
        if step == 2 and scenario == "fail" and runtime.rank() == 1:
            raise RuntimeError("injected failure")

    # show_progress=False still makes tqdm's lock (the leaked semaphore of old), without bars in stderr
    pipe(3, num_images_per_prompt=2, num_inference_steps=100_000, show_progress=False, callback_on_step_end=on_step)


def main(argv: list[str]) -> int:
    scenario, folder = argv
    # A terminal's foreground command starts with SIGINT at its default; the test runner may have
    # started us with it ignored (a background job), which launch() would respect.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        launch(rank_main, (scenario, folder), nproc=2)
    except LaunchInterrupted as error:
        print(f"swiftfusion: {error}", file=sys.stderr)
        return error.exit_code
    except LaunchError as error:
        print(f"swiftfusion: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
