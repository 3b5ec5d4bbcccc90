"""ImageNet weights of a backbone, given as a URL or a local file, with an error that says how to go without."""
from paddle.utils.download import get_weights_path_from_url

from ..engine import checkpoint

__all__ = ['load_backbone_pretrained']


def load_backbone_pretrained(layer, pretrained, key):
    """Load `pretrained` (URL or local .pdparams / .safetensors) into `layer`, as ppdet's Swin backbone does.

    Args:
        layer (nn.Layer): the backbone; the file's names are its state-dict names.
        pretrained (str): URL (downloaded once into ppdet's weights cache) or path.
        key (str): the config option that gave it, e.g. 'SwinTransformer.pretrained', named in the error.

    Raises:
        safe_load.UnsafeWeightsError: the file's pickle is not only data (a downloaded file runs no code);
            the file is read by `checkpoint.read_state` (a `.safetensors` file by safetensors).
        RuntimeError: the download failed (offline, unreachable URL): names the URL, the key and
            `pretrained: ''`, which builds without ImageNet weights.
    """
    path = pretrained
    if pretrained.startswith(('http://', 'https://')):
        try:
            path = get_weights_path_from_url(pretrained)
        except Exception as err:  # requests' connection errors, or Paddle's retry-limit RuntimeError
            raise RuntimeError(f"{key}: could not download the ImageNet weights {pretrained} ({err}). Set "
                               f"`pretrained: ''` in that section to build without them (e.g. when the "
                               f"detector's weights are loaded afterwards), or give a local file.") from err
    layer.set_state_dict(checkpoint.read_state(path))
