"""The Qwen2.5 chat template's markers, as DeepResearcher's outputs hold them (its text is
scored by counting them)."""

ASSISTANT_TURN = "<|im_start|>assistant"
USER_TURN = "<|im_start|>user\n"
END_OF_TURN = "<|im_end|>"
TOOL_RESPONSE = "<|im_start|>user\n<tool_response>"
