"""The one exception type for problems the user can fix (bad data, bad constants, bad files).

Entry scripts catch it and print its message without a traceback: the message itself names
the file or constant and says what to do.
"""


class UserError(Exception):
    pass
