"""The hello app behind WhiteNoise, serving BENCH_STATIC_DIR at /static/ (static scenarios)."""

import os

from hello import app as hello
from whitenoise import WhiteNoise

app = WhiteNoise(hello, root=os.environ["BENCH_STATIC_DIR"], prefix="/static/")
