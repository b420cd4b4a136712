# Co-DINO, 5 feature scales, ResNet-50 backbone, COCO (80 classes): the model of the official
# "co_dino_5scale_r50_8xb2_1x_coco" checkpoints, written for serving. Every value that shapes a
# weight or an output matches that checkpoint (tests/unit/test_model_layout.py compares the state dict
# with tests/data/reference_layouts/); training-only settings (schedules, assigners, samplers,
# augmentation, pretrained-backbone URLs) are left out, because a served model is never trained.
custom_imports = dict(imports=['codetr_serve.models'], allow_failed_imports=False)
default_scope = 'mmdet'

num_classes = 80
embed_dims = 256
num_levels = 5          # four backbone stages plus one extra level from the neck
strides = [4, 8, 16, 32, 64]
box_deltas = dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])

# Deformable attention over the five levels, used by the encoder and the decoder's cross-attention.
deformable_attention = dict(type='MultiScaleDeformableAttention', embed_dims=embed_dims,
                            num_levels=num_levels, dropout=0.0)

# The DETR-style query head: two-stage DINO with denoising queries and two collaborative branches.
query_head = dict(
    type='CoDINOHead', num_query=900, num_classes=num_classes, in_channels=2048, as_two_stage=True,
    dn_cfg=dict(label_noise_scale=0.5, box_noise_scale=1.0,
                group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
    transformer=dict(
        type='CoDinoTransformer', with_coord_feat=False, num_co_heads=2, num_feature_levels=num_levels,
        encoder=dict(
            type='DetrTransformerEncoder', num_layers=6, with_cp=4,
            transformerlayers=dict(type='BaseTransformerLayer', attn_cfgs=deformable_attention,
                                   feedforward_channels=2048, ffn_dropout=0.0,
                                   operation_order=('self_attn', 'norm', 'ffn', 'norm'))),
        decoder=dict(
            type='DinoTransformerDecoder', num_layers=6, return_intermediate=True,
            transformerlayers=dict(
                type='DetrTransformerDecoderLayer', feedforward_channels=2048, ffn_dropout=0.0,
                attn_cfgs=[dict(type='MultiheadAttention', embed_dims=embed_dims, num_heads=8, dropout=0.0),
                           deformable_attention],
                operation_order=('self_attn', 'norm', 'cross_attn', 'norm', 'ffn', 'norm')))),
    positional_encoding=dict(type='SinePositionalEncoding', num_feats=embed_dims // 2, temperature=20,
                             normalize=True),
    # The losses stay because use_sigmoid decides the classifier's output width.
    loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
    loss_bbox=dict(type='L1Loss', loss_weight=5.0),
    loss_iou=dict(type='GIoULoss', loss_weight=2.0))

# Auxiliary heads of the collaborative training (Faster R-CNN style RPN + RoI head, and ATSS). They are
# part of the checkpoint; at inference only the query head's output is used (eval_module='detr').
rpn_head = dict(
    type='RPNHead', in_channels=embed_dims, feat_channels=embed_dims,
    anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                          ratios=[0.5, 1.0, 2.0], strides=strides + [128]),
    bbox_coder=dict(box_deltas, target_stds=[1.0] * 4),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=12.0),
    loss_bbox=dict(type='L1Loss', loss_weight=12.0))
roi_head = dict(
    type='CoStandardRoIHead',
    bbox_roi_extractor=dict(type='SingleRoIExtractor', out_channels=embed_dims, featmap_strides=strides,
                            finest_scale=56, roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0)),
    bbox_head=dict(type='Shared2FCBBoxHead', in_channels=embed_dims, fc_out_channels=1024, roi_feat_size=7,
                   num_classes=num_classes, bbox_coder=box_deltas, reg_class_agnostic=False,
                   reg_decoded_bbox=True,
                   loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=12.0),
                   loss_bbox=dict(type='GIoULoss', loss_weight=120.0)))
atss_head = dict(
    type='CoATSSHead', num_classes=num_classes, in_channels=embed_dims, feat_channels=embed_dims,
    stacked_convs=1, bbox_coder=box_deltas,
    anchor_generator=dict(type='AnchorGenerator', octave_base_scale=8, scales_per_octave=1, ratios=[1.0],
                          strides=strides + [128]),
    loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=12.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=24.0),
    loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=12.0))

model = dict(
    type='CoDETR', use_lsj=False, eval_module='detr',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=False, batch_augments=None),
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
                  norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True, style='pytorch'),
    neck=dict(type='ChannelMapper', in_channels=[256, 512, 1024, 2048], kernel_size=1, out_channels=embed_dims,
              act_cfg=None, norm_cfg=dict(type='GN', num_groups=32), num_outs=num_levels),
    query_head=query_head, rpn_head=rpn_head, roi_head=[roi_head], bbox_head=[atss_head],
    # Per head, in the order query head, RPN + RoI head, ATSS head.
    test_cfg=[
        dict(max_per_img=300, nms=dict(type='soft_nms', iou_threshold=0.8)),
        dict(rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
             rcnn=dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)),
        dict(nms_pre=1000, min_bbox_size=0, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.6),
             max_per_img=100),
    ])

# Resize target for keep_ratio resizing, as (long-side cap, short-side cap): every image is
# scaled by min(1333 / long side, 800 / short side). A 1280x720 frame runs at 1333x750.
# Change it here, in a config that inherits this one, or at load time with mmengine cfg-options
# plus codetr_serve.models.apply_test_scale (a Python config is evaluated when it is parsed, so
# overriding `test_scale` alone does not reach the pipeline below):
#     cfg.merge_from_dict({'test_scale': (1280, 720)}); apply_test_scale(cfg)
test_scale = (1333, 800)

# No LoadAnnotations: a served image has no ground truth. LoadImageFromFile keeps the config
# usable by mmdet tools on files; mmdet's inference_detector swaps it for LoadImageFromNDArray
# when given arrays, and codetr_serve's pipeline replaces it with in-memory loading.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=test_scale, keep_ratio=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]

# Only what the test pipeline and class names need: the dataset type gives the COCO class names.
test_dataloader = dict(batch_size=1, dataset=dict(type='CocoDataset', test_mode=True, pipeline=test_pipeline))
val_dataloader = test_dataloader
