"""Import hook installed with peft-softhard (through peft_softhard_autoload.pth).

It runs at interpreter start and costs one entry in `sys.meta_path`: nothing is imported until the program
itself imports `peft`. Right after peft has loaded, `peft_softhard` is imported too, so the SOFTHARD type is
known to `PeftConfig.from_pretrained` / `PeftModel.from_pretrained` without the user remembering an import.
A failure there becomes a warning: it must never break `import peft`. Set PEFT_SOFTHARD_AUTOLOAD=0 to disable.
"""

import importlib.abc
import importlib.util
import os
import sys
import warnings


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "peft":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from coming back here
        spec = importlib.util.find_spec("peft")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_peft = spec.loader.exec_module

        def exec_module(module):
            exec_peft(module)
            try:
                importlib.import_module("peft_softhard")
            except Exception as error:  # never break `import peft`
                warnings.warn(f"peft-softhard could not register the SOFTHARD method: {error}", stacklevel=2)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if os.environ.get("PEFT_SOFTHARD_AUTOLOAD", "1") == "0" or "peft" in sys.modules:
        return
    if not any(isinstance(finder, _AfterPeftImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())


install()
