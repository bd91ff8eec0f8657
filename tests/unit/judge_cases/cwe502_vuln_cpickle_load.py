import cPickle


def read_model(upload):
    return cPickle.load(upload)
