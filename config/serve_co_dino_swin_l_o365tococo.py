# Serving variant of the official Co-DINO Swin-L (Objects365 -> COCO) config.
# Same model and weights layout; only the test-time data pipeline differs (see config/README.md).
_base_ = ['./co_dino_5scale_swin_l_16xb1_16e_o365tococo.py']

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

val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
