"""The one error type of the official-config translation: it names the config file, the module and the key."""

__all__ = ['OfficialConfigError']


class OfficialConfigError(ValueError):
    """An official RT-DETR config asks for something ppdet_rtdetr cannot carry over.

    Args:
        path (str): the config file given to `load_config`.
        module (str): the official section (module name, reader or optimizer entry).
        key (str|None): the option, None when the whole module is meant.
        why (str): what cannot be carried over, and what can.
    """

    def __init__(self, path, module, key, why):
        where = module if key is None else f'{module}.{key}'
        super().__init__(f'{path}: {where}: {why}')
        self.path, self.module, self.key = path, module, key
