# Co-DINO, 5 feature scales, Swin-L backbone, pre-trained on Objects365 and fine-tuned on COCO: the model
# of the official "co_dino_5scale_swin_l_16xb1_16e_o365tococo" checkpoint, written for serving. It shares
# the R50 serving config's heads; what differs is the backbone, the neck's input widths, the denoising
# settings, the encoder's checkpointing and the test scale.
_base_ = ['./serve_co_dino_r50.py']

swin_widths = [192, 384, 768, 1536]  # Swin-L stage outputs (embed_dims 192, doubled per stage)

model = dict(
    backbone=dict(
        _delete_=True, type='SwinTransformer', pretrain_img_size=384, embed_dims=swin_widths[0],
        depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, mlp_ratio=4, qkv_bias=True,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.3, patch_norm=True, out_indices=(0, 1, 2, 3),
        with_cp=True, convert_weights=True),
    neck=dict(in_channels=swin_widths),
    query_head=dict(
        dn_cfg=dict(box_noise_scale=0.4, group_cfg=dict(num_dn_queries=500)),
        transformer=dict(encoder=dict(with_cp=6))))

# Resize target for keep_ratio resizing, as (long-side cap, short-side cap): every image is
# scaled by min(2048 / long side, 1280 / short side), up or down. That is the official evaluation
# scale, and it UPSCALES a 1280x720 frame to 2048x1152 (2.56x the pixels, and compute grows
# faster than that in the encoder). For video frames use e.g. (1280, 720) to run them at native
# size (faster, lower GPU memory, possibly lower accuracy on small objects: measure on your data).
# Change it here, in a config that inherits this one, or at load time with mmengine cfg-options
# plus codetr_serve.models.apply_test_scale (a Python config is evaluated when it is parsed, so
# overriding `test_scale` alone does not reach the pipeline below):
#     cfg.merge_from_dict({'test_scale': (1280, 720)}); apply_test_scale(cfg)
test_scale = (2048, 1280)

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

test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
val_dataloader = test_dataloader
