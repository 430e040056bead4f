"""The PPO roles as plain classes; `ray.remote` is applied where they are launched."""
