"""The name table: how each module of an official PaddleDetection RT-DETR(v2) / Mask-RT-DETR config maps onto ours.

One `ModuleSpec` per official module. Its fields say, key by key, what the translator does with the official
section; every default listed here is the official class signature's (PaddleDetection develop,
`ppdet/modeling/...`), written down where it differs from ours or where one side shares the key globally
(`__shared__`) and the other does not, so a key the official file leaves out means what it meant there.
"""
from collections import namedtuple

__all__ = ['ModuleSpec', 'MODULES', 'MASK_POST_PROCESS', 'BACKBONES', 'TRANSFORMERS', 'ANY']

ANY = object()  # in `fixed`: every value is accepted (the key has no effect for the cases we build)

ModuleSpec = namedtuple('ModuleSpec', [
    'ours',      # our registered module name
    'keys',      # {official key: our key} carried over
    'defaults',  # {official key: official default} written when the section (and, if shared, the global) lacks it
    'shared',    # official __shared__ keys: a global value reaches the module as it did in the official code
    'fixed',     # {official key: accepted values (tuple) or ANY}: dropped; another value is refused
    'inject',    # {official key: module category} of injected sub-modules ('loss', 'matcher', 'encoder_layer')
])


def _spec(ours, keys, defaults=None, shared=(), fixed=None, inject=None):
    keys = {k: k for k in keys} if isinstance(keys, (list, tuple)) else dict(keys)
    return ModuleSpec(ours, keys, defaults or {}, tuple(shared), fixed or {}, inject or {})


_TRANSFORMER_KEYS = ['num_classes', 'hidden_dim', 'num_queries', 'backbone_feat_channels', 'feat_strides',
                     'num_levels', 'num_decoder_points', 'nhead', 'num_decoder_layers', 'dim_feedforward', 'dropout',
                     'activation', 'num_denoising', 'label_noise_ratio', 'box_noise_scale', 'learnt_init_query',
                     'eval_size', 'eval_idx', 'eps', 'query_pos_head_inv_sig']
# position_embed_type is only asserted in the official transformers (sine and learned build the same model)
_TRANSFORMER_SHARED = ['num_classes', 'hidden_dim', 'eval_size']
_TRANSFORMER_FIXED = {'position_embed_type': ('sine', 'learned')}

MODULES = {
    'DETR': _spec('RTDETRDetector', ['backbone', 'neck', 'transformer', 'detr_head', 'post_process',
                                     'exclude_post_process', 'with_mask'],
                  defaults={'post_process': 'DETRPostProcess'}, shared=['exclude_post_process', 'with_mask'],
                  fixed={'post_process_semi': (None,)}),
    # backbones
    'ResNet': _spec('RTDETRResNet', ['depth', 'variant', 'ch_in', 'lr_mult_list', 'norm_type', 'norm_decay',
                                     'freeze_norm', 'freeze_at', 'return_idx', 'num_stages', 'freeze_stem_only'],
                    defaults={'variant': 'b', 'norm_type': 'bn'}, shared=['norm_type'],
                    fixed={'groups': (1,), 'base_width': (64,), 'dcn_v2_stages': ([-1],), 'std_senet': (False,)}),
    # official Swin / FocalNet: `arch` wins over the explicit sizes and gives the ImageNet URL (pretrained: None)
    'SwinTransformer': _spec('RTDETRSwinTransformer', ['arch', 'pretrain_img_size', 'patch_size', 'in_chans',
                                                       'embed_dim', 'depths', 'num_heads', 'window_size', 'mlp_ratio',
                                                       'qkv_bias', 'qk_scale', 'drop_rate', 'attn_drop_rate',
                                                       'drop_path_rate', 'ape', 'patch_norm', 'out_indices',
                                                       'frozen_stages', 'pretrained'],
                             defaults={'arch': 'swin_T_224'}),
    'FocalNet': _spec('RTDETRFocalNet', ['arch', 'out_indices', 'frozen_stages', 'patch_size', 'in_chans', 'embed_dim',
                                         'depths', 'mlp_ratio', 'drop_rate', 'drop_path_rate', 'patch_norm',
                                         'focal_levels', 'focal_windows', 'use_conv_embed', 'use_layerscale',
                                         'layerscale_value', 'use_postln', 'use_postln_in_modulation',
                                         'normalize_modulator', 'pretrained'],
                      defaults={'arch': 'focalnet_T_224_1k_srf'}, fixed={'use_checkpoint': (False,)}),
    'PPHGNetV2': _spec('RTDETRHGNetV2', ['arch', 'use_lab', 'lr_mult_list', 'return_idx', 'freeze_stem_only',
                                         'freeze_at', 'freeze_norm']),
    # neck
    'HybridEncoder': _spec('RTDETRHybridEncoder', ['in_channels', 'feat_strides', 'hidden_dim', 'use_encoder_idx',
                                                   'num_encoder_layers', 'encoder_layer', 'pe_temperature',
                                                   'expansion', 'depth_mult', 'act', 'trt', 'eval_size'],
                           # ours shares hidden_dim, the official encoder does not: its own default holds
                           defaults={'hidden_dim': 256, 'encoder_layer': 'TransformerLayer'},
                           shared=['depth_mult', 'act', 'trt', 'eval_size'], inject={'encoder_layer': 'encoder_layer'}),
    'TransformerLayer': _spec(None, ['d_model', 'nhead', 'dim_feedforward', 'dropout', 'activation'],
                              defaults={'dim_feedforward': 1024, 'dropout': 0., 'activation': 'relu'},
                              fixed={'attn_dropout': (None,), 'act_dropout': (None,),
                                     'normalize_before': (False,)}),
    # transformers
    'RTDETRTransformer': _spec('RTDETRDeformableTransformer', _TRANSFORMER_KEYS,
                               defaults={'learnt_init_query': True}, shared=_TRANSFORMER_SHARED,
                               fixed=_TRANSFORMER_FIXED),
    'RTDETRTransformerv2': _spec('RTDETRDeformableTransformer',
                                 dict({k: k for k in _TRANSFORMER_KEYS},
                                      cross_attn_sampling_method='cross_attn_method'),
                                 defaults={'learnt_init_query': True, 'num_decoder_points': 4},
                                 shared=_TRANSFORMER_SHARED, fixed=_TRANSFORMER_FIXED),
    # Mask-RT-DETR (configs/mask_rtdetr): DETR's global `with_mask: True` reaches RTDETRDetector and the matcher
    # through their shared `with_mask`, and turns DETRPostProcess into MASK_POST_PROCESS
    'MaskHybridEncoder': _spec('RTDETRMaskHybridEncoder', ['in_channels', 'feat_strides', 'hidden_dim',
                                                           'use_encoder_idx', 'num_encoder_layers', 'encoder_layer',
                                                           'num_prototypes', 'pe_temperature', 'expansion',
                                                           'depth_mult', 'mask_feat_channels', 'act', 'trt',
                                                           'eval_size'],
                               defaults={'hidden_dim': 256, 'encoder_layer': 'TransformerLayer'},
                               shared=['depth_mult', 'act', 'trt', 'eval_size', 'num_prototypes'],
                               inject={'encoder_layer': 'encoder_layer'}),
    'MaskRTDETR': _spec('RTDETRMaskTransformer', _TRANSFORMER_KEYS + ['position_embed_type', 'num_prototypes',
                                                                      'mask_enhanced'],
                        shared=_TRANSFORMER_SHARED + ['num_prototypes']),
    'MaskDINOHead': _spec('RTDETRMaskHead', ['loss'], defaults={'loss': 'DINOLoss'}, inject={'loss': 'loss'}),
    'MaskDINOLoss': _spec('RTDETRMaskCriterion', ['num_classes', 'matcher', 'loss_coeff', 'aux_loss', 'use_focal_loss',
                                                  'use_vfl', 'vfl_iou_type', 'num_sample_points', 'oversample_ratio',
                                                  'important_sample_ratio'],
                          defaults={'matcher': 'HungarianMatcher', 'use_vfl': False, 'use_focal_loss': False,
                                    'vfl_iou_type': 'bbox',
                                    'loss_coeff': {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}},
                          shared=['num_classes', 'use_focal_loss', 'num_sample_points'],
                          inject={'matcher': 'matcher'}),
    # head, loss, matcher, post-process
    'DINOHead': _spec('RTDETRHead', ['loss'], defaults={'loss': 'DINOLoss'}, fixed={'eval_idx': (-1,)},
                      inject={'loss': 'loss'}),
    'DINOLoss': _spec('RTDETRCriterion', ['num_classes', 'matcher', 'loss_coeff', 'aux_loss', 'use_focal_loss',
                                          'use_vfl'],
                      defaults={'matcher': 'HungarianMatcher', 'use_vfl': False, 'use_focal_loss': False,
                                'loss_coeff': {'class': 1, 'bbox': 5, 'giou': 2}},
                      shared=['num_classes', 'use_focal_loss'],
                      fixed={'vfl_iou_type': ('bbox',), 'use_uni_match': (False,), 'uni_match_ind': ANY},
                      inject={'matcher': 'matcher'}),
    'MaskDINOLoss': _spec('RTDETRMaskCriterion', ['num_classes', 'matcher', 'loss_coeff', 'aux_loss', 'use_focal_loss',
                                                  'use_vfl', 'vfl_iou_type', 'num_sample_points', 'oversample_ratio',
                                                  'important_sample_ratio'],
                          defaults={'matcher': 'HungarianMatcher', 'use_vfl': False, 'use_focal_loss': False,
                                    'vfl_iou_type': 'bbox',
                                    'loss_coeff': {'class': 4, 'bbox': 5, 'giou': 2, 'mask': 5, 'dice': 5}},
                          shared=['num_classes', 'use_focal_loss', 'num_sample_points'], inject={'matcher': 'matcher'}),
    'HungarianMatcher': _spec('RTDETRHungarianMatcher', ['matcher_coeff', 'use_focal_loss', 'alpha', 'gamma',
                                                         'with_mask', 'num_sample_points'],
                              # the mask terms only count with with_mask (Mask-RT-DETR)
                              defaults={'matcher_coeff': {'class': 1, 'bbox': 5, 'giou': 2, 'mask': 1, 'dice': 1},
                                        'use_focal_loss': False},
                              shared=['use_focal_loss', 'with_mask', 'num_sample_points']),
    'DETRPostProcess': _spec('RTDETRPostProcess', ['num_classes', 'num_top_queries', 'use_focal_loss'],
                             defaults={'num_top_queries': 100, 'use_focal_loss': False},
                             shared=['num_classes', 'use_focal_loss'],
                             fixed={'dual_queries': (False,), 'dual_groups': (0,), 'with_mask': (False,),
                                    'bbox_decode_type': ('origin',), 'mask_stride': ANY, 'mask_threshold': ANY,
                                    'use_avg_mask_score': ANY}),
}

# DETRPostProcess of a config whose `with_mask` (global or its own) is true: boxes and masks, at any batch size
MASK_POST_PROCESS = _spec('RTDETRMaskPostProcess', ['num_classes', 'num_top_queries', 'use_focal_loss', 'mask_stride',
                                                    'mask_threshold', 'use_avg_mask_score', 'bbox_decode_type'],
                          defaults={'num_top_queries': 100, 'use_focal_loss': False},
                          shared=['num_classes', 'use_focal_loss'],
                          fixed={'dual_queries': (False,), 'dual_groups': (0,), 'with_mask': (True,)})

# official transformer names that mark a `DETR` config as RT-DETR (or Mask-RT-DETR)
TRANSFORMERS = ('RTDETRTransformer', 'RTDETRTransformerv2', 'MaskRTDETR')

# official backbones with a counterpart here (any other backbone registered in ppdet is kept as it is)
BACKBONES = ('ResNet', 'PPHGNetV2', 'SwinTransformer', 'FocalNet')
