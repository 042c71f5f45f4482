"""WSGI entry point of the test site: ``testsite.wsgi:application``.

``validated_application`` is the same app behind ``wsgiref.validate.validator``.
"""

import os
from wsgiref.validate import validator

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testsite.settings")

application = get_wsgi_application()
validated_application = validator(application)
