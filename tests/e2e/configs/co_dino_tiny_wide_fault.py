# Test-only model (tests/e2e/test_faults.py): the tiny Co-DINO with learned position embeddings that cover
# 70 columns of the finest feature level (stride 4) instead of the sine encoding. An image whose padded
# canvas is wider than 280 px at the 320x192 test scale -- e.g. a 2:1 frame, resized to 320x160 -- makes
# the forward raise IndexError; a 4:3 frame (256x192) runs normally. A real fault of the model, made by
# configuration alone: no code path exists for it in the server.
_base_ = ['../../../config/co_dino_tiny.py']

model = dict(
    query_head=dict(
        positional_encoding=dict(
            _delete_=True, type='LearnedPositionalEncoding', num_feats=32, row_num_embed=70,
            col_num_embed=70)))
