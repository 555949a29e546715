"""placeholder until written"""
def generate(pipe, **kw):
    raise NotImplementedError
