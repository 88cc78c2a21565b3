# The libraries every mome build links besides MPI, OpenMP and BLAS, from Debian's packages: HDF5 (the Open MPI
# build), inih, jansson, ZeroMQ and liblinear. Included by the main CMakeLists.txt and by tests/fuzz (a project of
# its own, built with clang); both call find_package(PkgConfig) first.
pkg_check_modules(HDF5MPI REQUIRED IMPORTED_TARGET hdf5-openmpi)
pkg_check_modules(INIH REQUIRED IMPORTED_TARGET inih)
pkg_check_modules(JANSSON REQUIRED IMPORTED_TARGET jansson)
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
# liblinear (the router's logistic regression and linear SVM) ships no pkg-config file in Debian.
find_path(LIBLINEAR_INCLUDE_DIR linear.h PATH_SUFFIXES liblinear REQUIRED)
find_library(LIBLINEAR_LIBRARY linear REQUIRED)
