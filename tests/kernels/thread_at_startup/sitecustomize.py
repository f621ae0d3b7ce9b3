"""Test helper: any Python process that has this directory on PYTHONPATH holds a thread.

Python imports ``sitecustomize`` at startup. Put this directory on
``PYTHONPATH`` in a kernelspec's ``env``: the interpreter starts a daemon
thread that waits for ever, as a library that starts a thread at import does
(a fork-server template of that interpreter must then refuse to fork). Not
part of kernelkeeper; never imports it.
"""

import threading

threading.Thread(target=threading.Event().wait, name="kk-test-idle", daemon=True).start()
