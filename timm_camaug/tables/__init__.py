""" Published result tables that commands compare with (data files; see each file's "source"). """
