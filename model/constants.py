"""Model facts with one named home each.

Values that a checkpoint's config carries are read from the config where the code has it; these are the
ones the released checkpoints fix (token ids, rates) and that code outside the model needs by name.
"""

from pathlib import Path

CONFIGS_DIR = Path(__file__).parent / "configs"
REFERENCE_3B_DIR = CONFIGS_DIR / "qwen2.5-omni-3b"  # the released 3B's small files, verbatim
REFERENCE_7B_CONFIG = CONFIGS_DIR / "qwen2.5-omni-7b" / "config.json"  # reconstructed, see model-facts

HUB_7B = "Qwen/Qwen2.5-Omni-7B"
HUB_3B = "Qwen/Qwen2.5-Omni-3B"

# Thinker vocabulary.
IM_START_ID = 151644
IM_END_ID = 151645  # thinker EOS
NEWLINE_ID = 198  # "\n" in Qwen2's and Qwen3's byte-level BPE (the generation prompt's last token)
ENDOFTEXT_ID = 151643  # pad
AUDIO_TOKEN_ID = 151646
AUDIO_BOS_ID = 151647
AUDIO_EOS_ID = 151648
VISION_BOS_ID = 151652
VISION_EOS_ID = 151653
IMAGE_TOKEN_ID = 151655
VIDEO_TOKEN_ID = 151656

# Talker vocabulary (codec codes) and the talker's text markers.
CODEC_PAD_ID = 8292
CODEC_BOS_ID = 8293
CODEC_EOS_ID = 8294
CODEC_MASK_ID = 8296
CODEC_VOCAB_SIZE = 8448
DIT_NUM_EMBEDS = 8193  # the DiT embeds codes below this; any other code must never reach it
TALKER_EOS_CODES = (CODEC_PAD_ID, CODEC_EOS_ID)  # transformers' default talker_eos_token_id
TALKER_TEXT_BOS_ID = 151860
TALKER_TEXT_EOS_ID = 151861
TALKER_TEXT_PAD_ID = 151859

# Voices of the released checkpoints: the talker's BOS text token for each.
VOICE_BOS_IDS = {"Chelsie": 151872, "Ethan": 151870}
SPEAKER_COND_DIM = 192  # spk_dict `cond`: (1, 192)
SPEAKER_REF_MEL_FRAMES = 400  # spk_dict `ref_mel`: (1, 400, 80), 4 s of mel
MEL_BINS_OUT = 80

# Rates.
INPUT_SAMPLE_RATE = 16_000  # audio encoder input, mono
OUTPUT_SAMPLE_RATE = 24_000  # BigVGAN output
CODES_PER_SECOND = 50  # talker codes, 20 ms each
AUDIO_TOKENS_PER_SECOND = 25  # one thinker audio token per 40 ms
VIDEO_FPS = 2.0  # video frames sampled for the vision encoder, as in training

# Audio output requires exactly this system prompt (the processor warns otherwise).
AUDIO_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of perceiving "
    "auditory and visual inputs, as well as generating text and speech."
)

# Reference talker sampling defaults (transformers' generate).
TALKER_TOP_K = 40
TALKER_TOP_P = 0.8
TALKER_TEMPERATURE = 0.9
TALKER_REPETITION_PENALTY = 1.05
TALKER_MAX_NEW_TOKENS = 4096
