class ServiceError(Exception):
    """A request that cannot be carried out (a run that cannot start or resume, a step that
    cannot be approved); the message says why."""


class NotFound(ServiceError):
    """What the request names does not exist."""


class OwnershipLost(ServiceError):
    """The run is no longer this executor's (another process closed it): stop at once."""
