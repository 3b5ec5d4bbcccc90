"""ppdet-rtdetr: RT-DETR / RT-DETRv2 as a PaddleDetection plugin.

Paddle itself is an extra: GPU users keep their own `paddlepaddle-gpu` 3.x (both wheels provide
the `paddle` module), CPU users install `.[cpu]`.
"""
from setuptools import find_packages, setup

setup(
    name='ppdet-rtdetr',
    version='0.1.0',
    description='RT-DETR and RT-DETRv2 real-time detection transformers for PaddleDetection',
    packages=find_packages(include=['ppdet_rtdetr', 'ppdet_rtdetr.*']),
    # the CPU operator's source, compiled on first use (export.cpu_fused_attention)
    package_data={'ppdet_rtdetr.native': ['*.cc']},
    python_requires='>=3.8',
    install_requires=[
        'paddledet==2.6.0',
        # paddledet 2.6.0 pins numpy<1.24, and its `sklearn` requirement is an empty placeholder
        # while `import ppdet` imports sklearn.
        'numpy<1.24',
        'scikit-learn<1.6',
        # `import ppdet` imports pkg_resources, which newer setuptools no longer ship (torch / onnx installs
        # upgrade setuptools and break ppdet otherwise)
        'setuptools<81',
        'scipy',
        'pyyaml',
        # .safetensors weights and checkpoints (docs/weights.md); 0.8 reads and writes Paddle tensors
        'safetensors>=0.8',
    ],
    extras_require={
        'cpu': ['paddlepaddle==3.3.1'],
        'test': ['pytest', 'matplotlib'],
        'demo': ['matplotlib'],  # the demo's learning-curve plot
        'onnx': ['paddle2onnx==2.1.0', 'onnxruntime>=1.31', 'ml_dtypes'],  # ml_dtypes: onnxruntime's quantizer
        'openvino': ['openvino==2026.4.1'],  # deploy/openvino; PaddleX and FastDeploy need their own environments
                                             # (deploy/paddlex, deploy/fastdeploy: requirements.txt)
    },
)
