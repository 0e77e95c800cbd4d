from adafilter_keras.wrapping.wrap import wrap

__all__ = ["wrap"]
