"""LoRETTA outside this project's trainer: the adapters as a method of other libraries.

``loretta_ds.integrations.peft``: LoRETTA_rep and LoRETTA_adp as PEFT methods, so that HF Trainer,
TRL's SFTTrainer, accelerate and anything built on ``peft.get_peft_model`` can train them.
"""
