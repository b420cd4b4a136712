# Serving variant of the official Co-DINO R50 (COCO, 1x, no LSJ) config.
# Same model and weights layout; only the test-time data pipeline differs (see config/README.md).
_base_ = ['./co_dino_5scale_r50_8xb2_1x_coco.py']

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

val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
