"""Problems the user can fix: entry scripts print the message (which names the file or constant and says
what to do) without a traceback."""


class UserError(Exception):
    pass
