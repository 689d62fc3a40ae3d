import sys

from checkers.grading.grade import main

sys.exit(main())
